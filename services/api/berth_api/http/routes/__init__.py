"""HTTP routes: each endpoint validates its body and hands over to plain Python."""
