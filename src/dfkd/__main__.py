from dfkd.commands import main

raise SystemExit(main())
