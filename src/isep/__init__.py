"""isep: ISEP and ISEP-FM (Implicit Support Expansion via stochastic Policy optimization) for offline RL.

Importing the package is cheap; Lightning and torch are imported by the modules that need them.
"""

__version__ = "0.1.0"
