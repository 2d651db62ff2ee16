"""driving"""
