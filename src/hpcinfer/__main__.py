from hpcinfer.cli.main import console

console()
