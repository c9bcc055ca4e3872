"""The `lip-jax` commands, one module each (train, inpaint, evaluate: `eval`, reconstruct, convert,
demo): `add_parser(subparsers)` defines its arguments, `run(args)` does its work. lip_jax.cli puts
them together. A command module imports only light modules at load time (`lip-jax --help` and
argument errors never load JAX); the rest is imported inside `run`. Commands do not import each
other: code two of them share lives in lip_jax.app (library) or lip_jax.commands.options (arguments).
"""
