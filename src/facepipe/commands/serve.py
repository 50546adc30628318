"""`facepipe serve GALLERY DETECT_MODEL RECOGNIZE_MODEL [--host 127.0.0.1 --port 8080]`: online recognition over HTTP."""

from __future__ import annotations

HELP = "serve recognition over HTTP (POST /v1/recognize, gallery enrol/remove; batched)"


def add_arguments(parser) -> None:
    parser.add_argument("gallery", help="gallery folder from `facepipe build-gallery` (local, file://, s3://, "
                                        "obs://; a remote gallery is served from a local copy)")
    parser.add_argument("detect_model", help="detector model.pt or its folder, or 'none' (whole image as one face)")
    parser.add_argument("recognize_model", help="recognizer model.pt or its folder (the gallery's)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; "
                                                            "another needs a token)")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--max-body-mb", type=float, default=10.0, help="request body limit (default 10 MB)")
    parser.add_argument("--max-batch", type=int, default=16, help="images per batched forward pass")
    parser.add_argument("--batch-wait-ms", type=float, default=5.0,
                        help="how long a request waits for others to share its batch")
    parser.add_argument("--token-for-recognize", action="store_true",
                        help="recognition and the gallery listing need the token too (also "
                             "FACEPIPE_SERVE_TOKEN_REQUIRED_FOR_RECOGNIZE=1)")
    parser.add_argument("--config", help="job YAML file (its 'recognize' section: top_k, threshold, ...)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recognize config key (repeatable)")


def run(args) -> int:
    import contextlib
    import os
    import sys

    import uvicorn

    from facepipe import storage
    from facepipe.config import load_config, parse_sets
    from facepipe.edge import fetch, given
    from facepipe.gallery.recognize import RecognizeConfig
    from facepipe.serving.app import RECOGNIZE_TOKEN_ENV, check_bind, create_app, load_token
    from facepipe.serving.online import OnlineRecognizer

    token = load_token()
    check_bind(args.host, token)
    cfg = load_config(RecognizeConfig, args.config, parse_sets(args.set), section="recognize")
    for_recognize = args.token_for_recognize or os.environ.get(RECOGNIZE_TOKEN_ENV, "").lower() in ("1", "true", "yes")
    with contextlib.ExitStack() as stack:
        gallery = fetch(stack, args.gallery)
        if not storage.parse_uri(args.gallery).is_local:
            print(f"facepipe serve: gallery changes go to the local copy {gallery}, not to {args.gallery}",
                  file=sys.stderr)
        detector = given(args.detect_model) and fetch(stack, args.detect_model, "model.pt")
        service = OnlineRecognizer(gallery, detector, fetch(stack, args.recognize_model, "model.pt"), cfg)
        app = create_app(service, token, for_recognize, int(args.max_body_mb * (1 << 20)), args.max_batch,
                         args.batch_wait_ms)
        if token is None:
            print("facepipe serve: no token configured (FACEPIPE_SERVE_TOKEN / FACEPIPE_SERVE_TOKEN_FILE): "
                  f"listening on {args.host} only; gallery enrol/remove are refused", file=sys.stderr)
        print(f"facepipe serve: {len(service.matcher.gallery.identities)} identities; "
              f"http://{args.host}:{args.port}/v1/recognize", file=sys.stderr, flush=True)
        uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0
