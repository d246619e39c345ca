from fsclone.cli import main

main()
