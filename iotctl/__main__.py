from iotctl.cli import main

main()
