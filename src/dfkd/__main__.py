from dfkd.cli import main

raise SystemExit(main())
