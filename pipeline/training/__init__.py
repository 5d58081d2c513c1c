"""The training engine every GAN shares: ``train(params)`` and the ``Trainer`` behind it."""
