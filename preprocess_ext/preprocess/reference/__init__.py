"""Plain NumPy references of every C++ kernel (slow, obviously correct; used by parity tests)."""
