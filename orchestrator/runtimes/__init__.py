"""The runtimes there are, and what the command line and the job schema need of them before one is
chosen: plain data, so that `orchestrator partition` starts without loading an engine (and the
schema can name them without importing this package's modules). runtimes/choice.py chooses one and
makes it; everything above this package holds a `Runtime` (runtimes/base.py) and never asks which."""

RUNTIMES: tuple[str, ...] = ("docker", "local", "swarm")  # what runtime names mean: make_runtime makes each

# The default Docker testbed (runtimes/docker_testbed.py builds it): the `testbed` command's defaults.
DEFAULT_DEVICES = "devices/edge4.yaml"
DEFAULT_NAME = "edge"
DEFAULT_SUBNET = "10.213.0.0/24"
