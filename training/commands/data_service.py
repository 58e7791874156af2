"""``keras-vit data-service dispatcher|worker``: TensorFlow's own tf.data service servers,
to which ``keras-vit train --data-service grpc://HOST:PORT`` sends reading, decoding and
augmentation (:mod:`training.data_service`). Each runs until SIGTERM or Ctrl-C."""
from __future__ import annotations

NAME = "data-service"
HELP = "run a tf.data service dispatcher or worker (for train --data-service)"


def add_arguments(parser) -> None:
    roles = parser.add_subparsers(dest="role", required=True, metavar="{dispatcher,worker}")
    dispatcher = roles.add_parser("dispatcher", help="the server trainers and workers meet at")
    dispatcher.add_argument("--port", type=int, required=True,
                            help="port to serve on (0: any free one, printed)")
    dispatcher.add_argument("--work-dir", help="journal the dispatcher's state here, so that "
                                               "a restarted dispatcher resumes its jobs")
    worker = roles.add_parser("worker", help="a server that reads, decodes and augments")
    worker.add_argument("--dispatcher", required=True, metavar="HOST:PORT",
                        help="the dispatcher's address")
    worker.add_argument("--port", type=int, default=0,
                        help="port to serve on (default: any free one, printed)")
    worker.add_argument("--address", metavar="HOST",
                        help="the name trainers reach this worker by (default: this host's "
                             "name)")


def check(args) -> None:
    from training.data_service import check_port, parse_address

    check_port(args.port)
    if args.role == "worker":
        parse_address(args.dispatcher, "--dispatcher")


def run(args) -> int:
    from training.data_service import serve_dispatcher, serve_worker

    if args.role == "dispatcher":
        return serve_dispatcher(args.port, args.work_dir)
    return serve_worker(args.dispatcher, args.port, args.address)
