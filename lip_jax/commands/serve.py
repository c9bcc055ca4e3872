"""`lip-jax serve`: a local web page to inpaint with the model loaded once: open a photo, draw the
hole, type a caption, see the candidates (the page: lip_jax.app.web).

Gradio is an extra (`pip install 'lip-jax[web]'`) and is imported only inside `run`, like JAX.
"""

from __future__ import annotations

import errno
import socket
import sys

from lip_jax.commands.options import OVERRIDES, config_arg, lip_ckpt_arg
from lip_jax.config import UsageError

LOCAL = ("127.0.0.1", "localhost", "::1")


def add_parser(subparsers):
    p = subparsers.add_parser("serve", help="a local web page: draw a hole, type a caption, see the candidates",
                              description="Serve a page on this machine to inpaint in the browser: open an image "
                                          "(or an example scene of the demo's model), paint the hole, type a caption, "
                                          "press Inpaint; the candidates come back best first, the result at the "
                                          "photo's own size as a PNG. The model is loaded once; requests run one at "
                                          "a time. Local only by default; the page has no authentication. Ctrl-C "
                                          "stops it (exit 0).",
                              epilog=OVERRIDES)
    config_arg(p, "configs/mps_coco.py", required=False)
    lip_ckpt_arg(p)
    p.add_argument("--clip", help="CLIP reranker: OpenAI ViT-B-32.pt, HF CLIPModel dir or hub name, orbax dir "
                                  "(default: none; candidates in sampling order)")
    p.add_argument("--clip-config", help="CLIP preset when the sizes cannot be read from --clip")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens the page, "
                        "which has no authentication, to the network)")
    p.add_argument("--port", type=int, default=7860, help="TCP port (default 7860)")
    # Ctrl-C stops serving cleanly (exit 0) instead of the other commands' "interrupted" (75)
    p.set_defaults(own_signals=True)
    return p


def run(args) -> None:
    def say(msg):
        print(f"lip-jax serve: {msg}", file=sys.stderr, flush=True)

    from lip_jax.app import inference
    from lip_jax.app.pipeline import Inpainter, check_config
    from lip_jax.weights.load import config_for

    # every input is checked before the weights are read and before gradio is imported
    config = config_for(args.ckpt, args.config, args.overrides, prepare=inference.with_mesh_section)
    check_config(config, args.config or args.ckpt)
    _check_port(args.host, args.port)
    try:
        from lip_jax.app import web
    except ModuleNotFoundError as e:
        if e.name is None or e.name.split(".")[0] not in ("gradio", "gradio_client", "fastapi", "uvicorn"):
            raise
        raise UsageError("serve needs gradio: pip install 'lip-jax[web]'") from None
    if args.host not in LOCAL:
        say(f"warning: listening on {args.host}: anyone who can reach this machine can use the page "
            f"(it has no authentication)")
    try:
        mesh = inference.mesh_of(config)
    except ValueError as e:
        raise UsageError(f"--config.mesh: {e}") from e
    inpainter = Inpainter.load(args.ckpt, config, clip=args.clip, clip_config=args.clip_config, mesh=mesh)
    say("loaded the model; reranking: " + ("off" if inpainter.clip is None else "CLIP"))
    web.serve(inpainter, args.host, args.port, say)


def _check_port(host: str, port: int) -> None:
    """The port is free to listen on (a one-line error before the model loads, not after)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except socket.gaierror:
        raise UsageError(f"--host {host}: not an address of this machine") from None
    except OSError as e:
        why = "in use" if e.errno == errno.EADDRINUSE else e.strerror
        raise UsageError(f"--host {host} --port {port}: cannot listen ({why})") from None
