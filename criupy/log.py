"""Where criupy's log goes for the span of one dump or restore (the library's log_file= and verbose=)."""

import contextlib
import logging

from criupy.errors import CriupyError


@contextlib.contextmanager
def log_to(log_file, verbose):
    """Log under "criupy" to log_file (if given) at INFO, or DEBUG when verbose. The error that ends the
    work goes into that file too; without a file it is left to the caller, who gets the exception."""
    logger = logging.getLogger("criupy")
    previous_level = logger.level
    handler = None
    if log_file:
        try:
            handler = logging.FileHandler(log_file)
        except OSError as e:
            raise CriupyError(f"cannot open log file {log_file}: {e.strerror}") from None
        handler.setFormatter(logging.Formatter("%(relativeCreated)9.1f ms %(name)s %(levelname)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    try:
        yield
    except CriupyError as e:
        if handler is not None:
            logger.error("%s", e)
        raise
    finally:
        logger.setLevel(previous_level)
        if handler is not None:
            logger.removeHandler(handler)
            handler.close()
