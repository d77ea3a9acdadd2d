"""`python -m berth_api.healthcheck`: the container HEALTHCHECK, so the image needs no curl."""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

URL = "http://127.0.0.1:8000/readyz"


def main() -> int:
    try:
        with urllib.request.urlopen(URL, timeout=3) as response:
            return 0 if response.status == 200 else 1
    except urllib.error.HTTPError as exc:
        print(f"not ready: {exc.read().decode(errors='replace')}", file=sys.stderr)
    except OSError as exc:
        print(f"not answering: {exc}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
