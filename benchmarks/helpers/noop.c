/* Round-trip probe: the smallest possible app, exits 0 immediately. */
int main(void) { return 0; }
