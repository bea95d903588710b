from segbill.cli import main

main()
