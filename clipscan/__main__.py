from clipscan.cli import main

raise SystemExit(main())
