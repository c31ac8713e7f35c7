package android.webkit;
public class MimeTypeMap { public static MimeTypeMap getSingleton() { return null; } public String getExtensionFromMimeType(String m) { return null; } }
