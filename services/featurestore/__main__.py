from featurestore import SPEC
from modelserve.server import serve

if __name__ == "__main__":
    import sys

    serve(SPEC, sys.argv[1:])
