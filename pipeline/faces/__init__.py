"""Face detection for the ``faces`` stage, usable on its own in a notebook::

    from pipeline.faces import load_detector
    detector = load_detector("retinaface", variant="mobilenet0.25_1mb", confidence=0.9)
    faces = detector.detect([rgb_uint8_array, ...])  # one Faces per image
    faces[0].boxes, faces[0].scores, faces[0].landmarks

Detectors by name: ``retinaface`` (our PyTorch RetinaFace, four released variants),
``face_alignment`` (the face-alignment package's S3FD) and ``dlib`` (dlib's HOG detector,
with the ``dlib`` extra).
"""

from pipeline.faces import dlib_hog, retinaface, sfd  # noqa: F401  (register the detectors)
from pipeline.faces.base import DETECTORS, FaceDetector, Faces, load_detector

__all__ = ["DETECTORS", "FaceDetector", "Faces", "load_detector"]
