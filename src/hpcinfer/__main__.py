from hpcinfer.cli.main import main

main()
