"""Clients: the bank's customers that orders are placed for, each booked on one desk."""
