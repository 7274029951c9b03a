from omniflash.cli import main

main()
