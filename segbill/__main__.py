from segbill import main

main()
