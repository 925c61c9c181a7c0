"""Downloads one source distribution from a PEP 503 package index and checks its sha256.

Used for detectron2's v0.6 tree: current pip refuses to even download that sdist because its
metadata names a URL dependency under an extra we never install.
Usage: python tools/fetch_sdist.py NAME VERSION DEST_DIR
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import urllib.request
from pathlib import Path


def fetch_sdist(name: str, version: str, dest: Path, index: str) -> Path:
    """Saves `<name>-<version>.tar.gz` from `index` into `dest` after checking its sha256."""
    page_url = f"{index.rstrip('/')}/{name}/"
    with urllib.request.urlopen(page_url, timeout=60) as resp:
        page = resp.read().decode()
    filename = f"{name}-{version}.tar.gz"
    links = re.findall(r'href="([^"]+)"', page)
    link = next((x for x in links if x.split("#")[0].endswith("/" + filename)), None)
    if link is None:
        raise SystemExit(f"{filename} is not listed at {page_url}")
    url, _, fragment = link.partition("#")
    url = urllib.request.urljoin(page_url, url)
    with urllib.request.urlopen(url, timeout=300) as resp:
        data = resp.read()
    if fragment.startswith("sha256="):
        digest = hashlib.sha256(data).hexdigest()
        if digest != fragment.split("=", 1)[1]:
            raise SystemExit(f"sha256 mismatch for {url}: got {digest}")
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / filename
    out.write_bytes(data)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    index_url = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple")
    print(fetch_sdist(sys.argv[1], sys.argv[2], Path(sys.argv[3]), index_url))
