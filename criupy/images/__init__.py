"""CRIU's image format: schemas (proto/, generated pb/), the reader and writer, and `show`.

    from criupy.images import ImagesDir
    from criupy.images.pb import core_pb2
"""

from criupy.images.imagesdir import ImageMissing, ImagesDir, decode_image, encode_image
from criupy.images.kinds import kind_of

__all__ = ["ImagesDir", "ImageMissing", "decode_image", "encode_image", "kind_of"]
