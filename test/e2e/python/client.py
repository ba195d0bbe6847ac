"""Fetches credentials with boto3's default chain, as an unmodified Python
application does, for the end-to-end matrix. One JSON line per fetch; with
argument 2 it waits for a line on stdin between the two fetches (the test
rotates the token meanwhile), so that the second fetch is botocore's own
refresh of the same credentials object, in the same process."""
import json
import sys

import boto3
import botocore


def emit(**kw):
    print(json.dumps(kw), flush=True)


def main():
    if sys.argv[1:] == ["version"]:
        print("%s (botocore %s)" % (boto3.__version__, botocore.__version__))
        return 0
    fetches = 2 if sys.argv[1:] == ["2"] else 1
    try:
        creds = boto3.Session().get_credentials()
        if creds is None:
            emit(ok=False, error="no credentials found by the default chain")
            return 1
        for i in range(fetches):
            if i:
                sys.stdin.readline()
            f = creds.get_frozen_credentials()
            exp = getattr(creds, "_expiry_time", None)
            emit(ok=True, AccessKeyId=f.access_key, SecretAccessKey=f.secret_key,
                 SessionToken=f.token,
                 Expiration=exp.strftime("%Y-%m-%dT%H:%M:%SZ") if exp else "")
    except Exception as e:  # the matrix records what the SDK says
        emit(ok=False, error="%s: %s" % (type(e).__name__, e))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
