"""Re-planning while a run goes on: what the world is measured to be, and what to do about it."""
