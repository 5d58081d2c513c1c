"""steam-gan: curate image datasets from Steam and train GANs on them.

All logic lives here as importable functions; ``stages/`` holds one thin CLI per DVC stage.
"""

__version__ = "0.1.0"
