"""Pictures and videos from a trained generator: the ``render`` stage's library.

One module per render (NVlabs' gen_images / style_mixing / gen_video / projector split):
``grids``, ``mixing``, ``interpolation``, ``directions``, ``projection``; ``synthesis`` is
what they share, ``video`` writes GIF and MP4, ``run`` draws everything a model supports.
"""
