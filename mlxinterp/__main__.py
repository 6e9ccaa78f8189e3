from mlxinterp.cli import main

main()
