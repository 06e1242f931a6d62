from criupy.cli import main

raise SystemExit(main())
