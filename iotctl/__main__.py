from iotctl.entry import main

main()
