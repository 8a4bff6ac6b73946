from pidone.cli import main

main()
