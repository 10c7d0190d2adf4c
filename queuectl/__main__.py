from queuectl.main import main

raise SystemExit(main())
