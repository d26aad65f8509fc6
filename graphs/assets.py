"""The content pipeline's asset store: images and audio by key, in any fsspec filesystem.

A local folder by default, an object store (``s3://``, ``gs://``, ``memory://``, ...) with the same code. Keys are
made here from a content id and the asset's kind, never taken from a request.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

from deployments.common import project_root
from graphs.schemas import CONTENT_ID

ASSET_FILES = {"image": "image.png", "audio": "audio.wav"}


def asset_key(content_id: str, kind: str) -> str:
    """Where a content's asset lives in the store: one name per kind, chosen here, never by a request."""
    return f"{content_id}/{ASSET_FILES[kind]}"


class AssetStore:
    """Binary assets by key, in any fsspec filesystem; local writes are atomic (temp file + rename)."""

    KEY = re.compile(
        CONTENT_ID.pattern.removesuffix("$") + "/(" + "|".join(map(re.escape, ASSET_FILES.values())) + ")$"
    )

    def __init__(self, url: str) -> None:
        import fsspec

        if "://" not in url and not Path(url).is_absolute():
            url = str(project_root() / url)
        self.url = url
        self.fs, self.root = fsspec.core.url_to_fs(url)
        self.local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))
        self.fs.makedirs(self.root, exist_ok=True)

    def _path(self, key: str) -> str:
        # Keys are made by the pipeline, never taken from a request, and still checked: nothing outside the store.
        if not self.KEY.match(key):
            raise ValueError(f"invalid asset key {key!r}")
        return f"{self.root.rstrip('/')}/{key}"

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        if self.local:
            tmp = f"{path}.{uuid.uuid4().hex}.tmp"
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        else:
            self.fs.pipe_file(path, data)

    def get(self, key: str) -> bytes:
        return self.fs.cat_file(self._path(key))
