from storaged.cli import main

raise SystemExit(main())
