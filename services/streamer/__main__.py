from modelserve.server import serve
from streamer import SPEC

if __name__ == "__main__":
    import sys

    serve(SPEC, sys.argv[1:])
