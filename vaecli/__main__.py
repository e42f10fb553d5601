from vaecli.cli.app import main

main()
