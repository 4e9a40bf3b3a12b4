"""Who may do what: Basic and IAP sign-in, users and roles, the role gate, failed-login limits."""
