// tests/pch.cpp: the one source of gradcam_test_pch, whose precompiled header the tests reuse. An
// executable, as the tests are: GCC refuses a header precompiled without their -fPIE.
int main() { return 0; }
