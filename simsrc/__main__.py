"""`python -m moesim`: the CLI through the interpreter that has moesim installed, whatever PATH holds."""
from .cli import main

main(prog_name="moesim")
