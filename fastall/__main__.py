from fastall.cli import main

main()
