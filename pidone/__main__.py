from pidone.main import main

main()
