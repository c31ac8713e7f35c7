package androidx.core.content;
public class FileProvider { public static android.net.Uri getUriForFile(android.content.Context c, String authority, java.io.File f) { return null; } }
