"""`pipeline faces`: find faces in scraped photos and write one training crop per face.

- `stage`: the per-chunk worker, `detect_faces` (what the CLI calls) and the single-photo
  pieces `find_faces` and `face_crop`, for notebooks;
- `detectors`: OpenCV's Haar cascades and YuNet behind one small interface.
"""

from pipeline.faces.stage import FaceParams, detect_faces, face_crop, find_faces, square_around

__all__ = ["FaceParams", "detect_faces", "face_crop", "find_faces", "square_around"]
