"""vaecli: train, inspect and sweep beta-VAEs from the command line."""

__version__ = "0.1.0"
