"""Serve a trained detector over HTTP (API, batching, web page): python tools/serve.py MODEL [--port 8000]

The code is in vggdet/cli/serve.py (also installed as `vggdet-serve`);
`python tools/serve.py --help` lists the flags."""
import sys

from vggdet.cli.serve import main

if __name__ == "__main__":
    sys.exit(main())
