"""Downloads that leave nothing behind when they fail."""

import contextlib
import os
import shutil


@contextlib.contextmanager
def cleaned_on_failure(folder: str):
    """Run the block; if it fails and `folder` did not exist before it, remove the folder
    (a failed download leaves no empty -gen behind)."""
    existed = os.path.isdir(folder)
    try:
        yield
    except BaseException:
        if not existed:
            shutil.rmtree(folder, ignore_errors=True)
        raise
