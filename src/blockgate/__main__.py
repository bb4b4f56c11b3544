from blockgate.cli import main

raise SystemExit(main())
