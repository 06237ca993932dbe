/* Wine 8 (Debian 12) lacks bcryptprimitives.dll, which Rust's standard library
 * imports on Windows for ProcessPrng (its random source: HashMap keys). Windows
 * 8.1 and later ship it. For the tests under Wine only, this stand-in exports
 * ProcessPrng over RtlGenRandom (advapi32's SystemFunction036), which Wine has.
 * tests/windows/run.sh builds it with mingw into the Wine prefix; it is never
 * shipped. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG chunk = len > 0x40000000 ? 0x40000000 : (ULONG)len;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
